//! Real servers the actuator tests drive, each started by the test on 127.0.0.1 with its own
//! temporary config and killed on drop (also when the test panics):
//!
//! ```text
//!   DnsServer  knotd (Knot) or named (BIND 9) serving one zone, updatable with the TSIG key
//!              TSIG_KEY; read back with kdig
//!   Haproxy  haproxy -db: one frontend, one backend `app` over the servers the test names,
//!            admin sockets (UNIX and TCP) and a user-level one
//! ```
//!
//! They come from Debian's packages (`knot`, `knot-dnsutils`, `bind9`, `haproxy`); a test finds the
//! programs with [`crate::require_program`], which skips (or fails under CI) when one is missing.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use drover::actuate::dns::{self, Expected};
use drover::actuate::StepContext;
use drover::spec::{DnsProtocol, DnsRecord, DnsRecordType, DnsStep, Tsig};

use crate::process::run_with_deadline;

/// The TSIG key the DNS servers let update the zone's records (and their `_drover.`
/// companions).
pub const TSIG_KEY: &str = "drover";
const TSIG_SECRET: &str = "ZHJvdmVyLXRlc3Qta2V5LTAxMjM0NTY3ODlhYmNkZWY=";
/// A key the DNS servers know (for zone transfers) but do not let update the zone.
pub const OUTSIDER_KEY: &str = "outsider";
/// The outsider key's secret.
pub const OUTSIDER_SECRET: &str = "b3V0c2lkZXIta2V5LTAxMjM0NTY3ODlhYmNkZWZnaGk=";
/// How long a server gets to answer after it is started.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// kdig (knot-dnsutils) asking one server on loopback, over TCP.
struct Kdig {
    path: PathBuf,
    port: u16,
    zone: String,
}

impl Kdig {
    /// What a resolver gets for `name type`, one value a line.
    fn query(&self, name: &str, rtype: &str) -> Vec<String> {
        let out = run_with_deadline(
            Command::new(&self.path)
                .arg("@127.0.0.1")
                .arg("-p")
                .arg(self.port.to_string())
                .args(["+tcp", "+short", "+timeout=2", "+retry=0"])
                .arg(name)
                .arg(rtype),
            Duration::from_secs(10),
        );
        assert!(out.success(), "kdig {name} {rtype} failed: {}", out.describe());
        out.stdout.lines().map(|l| l.trim().trim_matches('"').to_string()).collect()
    }

    /// The zone's SOA serial, or `None` while the server does not answer.
    fn soa_serial(&self) -> Option<u32> {
        let out =
            run_with_deadline(
                Command::new(&self.path)
                    .arg("@127.0.0.1")
                    .arg("-p")
                    .arg(self.port.to_string())
                    .args(["+tcp", "+short", "+timeout=1", "+retry=0", &self.zone, "SOA"]),
                Duration::from_secs(5),
            );
        out.stdout.split_whitespace().nth(2)?.parse().ok()
    }

    /// Waits until the server serves the zone; panics with its log if it exits or takes
    /// longer than START_TIMEOUT.
    fn wait_until_serving(&self, what: &str, child: &mut Child, log: impl Fn() -> String) {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("{what} exited ({status}) before serving:\n{}", log());
            }
            if self.soa_serial().is_some() {
                return;
            }
            if started.elapsed() > START_TIMEOUT {
                panic!("{what} did not serve {} within {START_TIMEOUT:?}:\n{}", self.zone, log());
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The zone file of `zone` holding `records` (name relative to the zone, type, value).
fn zone_file(zone: &str, records: &[(&str, &str, &str)]) -> String {
    let mut text = format!(
        "$ORIGIN {zone}\n$TTL 60\n@ SOA ns1 hostmaster 1 3600 600 86400 60\n@ NS ns1\n\
         ns1 A 127.0.0.1\n"
    );
    for (name, rtype, value) in records {
        text += &format!("{name} {rtype} {value}\n");
    }
    text
}

/// The names the update key may change: each record's name and its `_drover.` companion.
fn update_owners(zone: &str, records: &[(&str, &str, &str)]) -> Vec<(String, String)> {
    let mut owners: Vec<(String, String)> = Vec::new();
    for (name, _, _) in records {
        let pair = (format!("{name}.{zone}"), format!("_drover.{name}.{zone}"));
        if !owners.contains(&pair) {
            owners.push(pair);
        }
    }
    owners
}

/// Starts `program` with `args`, its stdout and stderr to `<dir>/<log>`.
fn spawn_logged(program: &Path, args: &[&std::ffi::OsStr], dir: &Path, log: &str) -> Child {
    let log = fs::File::create(dir.join(log)).expect("create the server's log");
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup log"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()))
}

/// An authoritative DNS server a test started, Knot (`knotd`) or BIND 9 (`named`), serving one
/// zone on a free loopback port (TCP and UDP) with the same keys: [`TSIG_KEY`] may update the
/// zone's records and their `_drover.` companions, [`OUTSIDER_KEY`] may only transfer the zone.
pub struct DnsServer {
    child: Child,
    dir: tempfile::TempDir,
    kdig: Kdig,
    program: &'static str,
}

impl DnsServer {
    /// Starts knotd for `zone` (e.g. `drover.test.`) holding `records` (name relative to the
    /// zone, type, value). `None` (after a skip message) when knotd or kdig is not installed.
    pub fn knot(test: &str, zone: &str, records: &[(&str, &str, &str)]) -> Option<DnsServer> {
        let knotd = crate::require_program(test, "knotd", "knot")?;
        let owners: Vec<String> =
            update_owners(zone, records).into_iter().flat_map(|(a, b)| [a, b]).collect();
        let owners = owners.join(", ");
        // knotd 3.x runs as the user that starts it when the config sets no `user:`, so this
        // works as root and as anyone else. The zone file is never written back
        // (zonefile-sync: -1); updates live in the journal under `storage`.
        let config = |root: &str, port: u16| {
            format!(
                "server:\n  rundir: \"{root}\"\n  listen: 127.0.0.1@{port}\n\
                 log:\n  - target: stderr\n    any: info\n\
                 database:\n  storage: \"{root}\"\n\
                 key:\n  - id: {TSIG_KEY}\n    algorithm: hmac-sha256\n    secret: {TSIG_SECRET}\n\
                 \x20 - id: {OUTSIDER_KEY}\n    algorithm: hmac-sha256\n    secret: {OUTSIDER_SECRET}\n\
                 acl:\n  - id: drover_update\n    key: {TSIG_KEY}\n    action: update\n\
                 \x20   update-type: [A, AAAA, CNAME, TXT]\n\
                 \x20   update-owner: name\n    update-owner-match: equal\n\
                 \x20   update-owner-name: [{owners}]\n\
                 \x20 - id: outsider_transfer\n    key: {OUTSIDER_KEY}\n    action: transfer\n\
                 template:\n  - id: default\n    storage: \"{root}\"\n    zonefile-sync: -1\n\
                 zone:\n  - domain: {zone}\n    file: zone.txt\n    acl: [drover_update, outsider_transfer]\n"
            )
        };
        DnsServer::launch(test, "knotd", &knotd, &["-c"], config, zone, records)
    }

    /// Starts knotd as a secondary of `primary`'s zone: it starts from the primary's zone as
    /// it was given (`records`), transfers the zone with [`OUTSIDER_KEY`] and asks the primary
    /// for a newer serial every 2 s (the least knotd allows; no NOTIFY needed). `None` (after a skip message) when
    /// knotd or kdig is not installed.
    pub fn knot_secondary(
        test: &str,
        primary: &DnsServer,
        records: &[(&str, &str, &str)],
    ) -> Option<DnsServer> {
        let knotd = crate::require_program(test, "knotd", "knot")?;
        let zone = primary.kdig.zone.clone();
        let primary_port = primary.kdig.port;
        let config = |root: &str, port: u16| {
            format!(
                "server:\n  rundir: \"{root}\"\n  listen: 127.0.0.1@{port}\n\
                 log:\n  - target: stderr\n    any: info\n\
                 database:\n  storage: \"{root}\"\n\
                 key:\n  - id: {OUTSIDER_KEY}\n    algorithm: hmac-sha256\n    secret: {OUTSIDER_SECRET}\n\
                 remote:\n  - id: primary\n    address: 127.0.0.1@{primary_port}\n    key: {OUTSIDER_KEY}\n\
                 template:\n  - id: default\n    storage: \"{root}\"\n    zonefile-sync: -1\n\
                 zone:\n  - domain: {zone}\n    file: zone.txt\n    master: primary\n\
                 \x20   refresh-min-interval: 2\n    refresh-max-interval: 2\n"
            )
        };
        DnsServer::launch(test, "knotd", &knotd, &["-c"], config, &zone, records)
    }

    /// Starts `named -g` for `zone` holding `records`; `None` (after a skip message) when named
    /// or kdig is not installed.
    pub fn bind(test: &str, zone: &str, records: &[(&str, &str, &str)]) -> Option<DnsServer> {
        let named = crate::require_program(test, "named", "bind9")?;
        let mut grants = String::new();
        for (name, companion) in update_owners(zone, records) {
            grants += &format!(
                "        grant {TSIG_KEY} name {name} A AAAA CNAME;\n        grant {TSIG_KEY} name {companion} TXT;\n"
            );
        }
        // named runs as the user that starts it without -u, so this works as root and as
        // anyone else; the zone file's directory must be writable (BIND keeps a journal).
        let config = |root: &str, port: u16| {
            format!(
                "options {{\n    directory \"{root}\";\n    pid-file \"{root}/named.pid\";\n\
                 \x20   session-keyfile \"{root}/session.key\";\n\
                 \x20   managed-keys-directory \"{root}\";\n\
                 \x20   listen-on port {port} {{ 127.0.0.1; }};\n    listen-on-v6 {{ none; }};\n\
                 \x20   recursion no;\n    notify no;\n    dnssec-validation no;\n}};\n\
                 controls {{ }};\n\
                 key \"{TSIG_KEY}\" {{ algorithm hmac-sha256; secret \"{TSIG_SECRET}\"; }};\n\
                 key \"{OUTSIDER_KEY}\" {{ algorithm hmac-sha256; secret \"{OUTSIDER_SECRET}\"; }};\n\
                 zone \"{zone}\" {{\n    type primary;\n    file \"{root}/zone.txt\";\n\
                 \x20   allow-transfer {{ key {OUTSIDER_KEY}; }};\n\
                 \x20   update-policy {{\n{grants}    }};\n}};\n"
            )
        };
        DnsServer::launch(test, "named", &named, &["-g", "-c"], config, zone, records)
    }

    /// Writes `config(dir, port)` and the zone file into a fresh temp dir, starts `program`
    /// with `args` and the config's path, and waits until it serves the zone.
    fn launch(
        test: &str,
        name: &'static str,
        program: &Path,
        args: &[&str],
        config: impl Fn(&str, u16) -> String,
        zone: &str,
        records: &[(&str, &str, &str)],
    ) -> Option<DnsServer> {
        let kdig = crate::require_program(test, "kdig", "knot-dnsutils")?;
        let dir = tempfile::Builder::new().prefix(&format!("{test}-")).tempdir().expect("temp dir");
        let port = free_tcp_and_udp_port();
        let conf = dir.path().join("server.conf");
        fs::write(&conf, config(&dir.path().display().to_string(), port))
            .expect("write the server's config");
        fs::write(dir.path().join("zone.txt"), zone_file(zone, records)).expect("write the zone");
        let mut args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
        args.push(conf.as_os_str());
        let mut child = spawn_logged(program, &args, dir.path(), "server.log");
        let kdig = Kdig { path: kdig, port, zone: zone.to_string() };
        let log = || fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
        kdig.wait_until_serving(name, &mut child, log);
        Some(DnsServer { child, dir, kdig, program: name })
    }

    /// `127.0.0.1:<port>`, for a step's `server`.
    pub fn server(&self) -> String {
        format!("127.0.0.1:{}", self.kdig.port)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// A file holding `secret`, for a step's `tsig.secret_file`.
    pub fn secret_file(&self, name: &str, secret: &str) -> String {
        let path = self.dir.path().join(name);
        fs::write(&path, format!("{secret}\n")).expect("write a secret file");
        path.to_string_lossy().into_owned()
    }

    /// The key the server lets update the zone, its secret in a file.
    pub fn key(&self) -> Tsig {
        Tsig {
            name: TSIG_KEY.into(),
            algorithm: "hmac-sha256".into(),
            secret_file: self.secret_file("drover.key", TSIG_SECRET),
        }
    }

    /// Sets `name` (absolute) to the A record `value` and the companion TXT record to `epoch`
    /// by hand, as an operator's nsupdate would (through drover's own update, with the
    /// server's key), on condition that the companion holds `expected`. Panics on failure.
    pub fn set_by_hand(&self, name: &str, value: &str, epoch: u64, expected: Expected) {
        let step = DnsStep {
            server: self.server(),
            zone: self.kdig.zone.clone(),
            tsig: Some(self.key()),
            records: vec![DnsRecord {
                name: name.into(),
                rtype: DnsRecordType::A,
                ttl_secs: 30,
                value: value.into(),
            }],
            protocol: DnsProtocol::Tcp,
            verify_servers: Vec::new(),
        };
        let ctx = StepContext {
            service: "by-hand".into(),
            epoch,
            from_site: String::new(),
            to_site: String::new(),
            recovery_point: None,
            test: false,
        };
        let runtime = tokio::runtime::Runtime::new().expect("a runtime");
        runtime
            .block_on(dns::update(&step, Duration::from_secs(5), &ctx, expected))
            .unwrap_or_else(|e| panic!("setting {name} = {value} at epoch {epoch} by hand: {e}"));
    }

    /// What a resolver gets for `name type` (kdig +short, over TCP), one value a line.
    pub fn dig(&self, name: &str, rtype: &str) -> Vec<String> {
        self.kdig.query(name, rtype)
    }

    /// The zone's SOA serial, or `None` while the server does not answer.
    pub fn soa_serial(&self) -> Option<u32> {
        self.kdig.soa_serial()
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("{} log:\n{}", self.program, self.log());
        }
    }
}

/// A loopback port free for both TCP and UDP (knotd listens on both).
fn free_tcp_and_udp_port() -> u16 {
    for _ in 0..50 {
        let tcp = TcpListener::bind("127.0.0.1:0").expect("bind a TCP port");
        let port = tcp.local_addr().expect("local addr").port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no loopback port free for both TCP and UDP");
}

/// A free loopback TCP port (bound, then released for a server to take).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("free port address").port()
}

/// One server of HAProxy's backend `app`.
pub struct Backend<'a> {
    pub name: &'a str,
    pub addr: SocketAddr,
    /// Starts in maintenance (`disabled`) when false.
    pub enabled: bool,
}

/// HAProxy in the foreground with a frontend on loopback, one backend `app`, an admin socket
/// (UNIX and TCP) and a user-level socket.
pub struct Haproxy {
    child: Child,
    dir: tempfile::TempDir,
    frontend: u16,
    tcp_stats: String,
    binary: PathBuf,
}

impl Haproxy {
    /// Starts `binary` (found with [`crate::require_program`]) balancing over `servers`.
    pub fn start(binary: &Path, servers: &[Backend<'_>]) -> Haproxy {
        let dir = tempfile::tempdir().expect("temp dir");
        let frontend = free_port();
        let tcp_stats = format!("127.0.0.1:{}", free_port());
        let d = dir.path().display();
        let mut config = format!(
            "global\n\
             \x20   stats socket {d}/admin.sock level admin\n\
             \x20   stats socket {d}/user.sock level user\n\
             \x20   stats socket ipv4@{tcp_stats} level admin\n\
             defaults\n\
             \x20   mode http\n\
             \x20   timeout connect 2s\n\
             \x20   timeout client 5s\n\
             \x20   timeout server 5s\n\
             frontend fe\n\
             \x20   bind 127.0.0.1:{frontend}\n\
             \x20   default_backend app\n\
             backend app\n\
             \x20   balance roundrobin\n"
        );
        for s in servers {
            let disabled = if s.enabled { "" } else { " disabled" };
            config += &format!("    server {} {}{disabled}\n", s.name, s.addr);
        }
        let cfg = dir.path().join("haproxy.cfg");
        fs::write(&cfg, config).expect("write haproxy.cfg");
        let child = Haproxy::spawn(binary, dir.path());
        let h = Haproxy { child, dir, frontend, tcp_stats, binary: binary.to_path_buf() };
        h.wait_started();
        h
    }

    /// Starts HAProxy on `dir`'s haproxy.cfg, appending to its log.
    fn spawn(binary: &Path, dir: &Path) -> Child {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("haproxy.log"))
            .expect("haproxy log");
        Command::new(binary)
            .arg("-db")
            .arg("-f")
            .arg(dir.join("haproxy.cfg"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()))
    }

    fn wait_started(&self) {
        let deadline = Instant::now() + START_TIMEOUT;
        while !(self.admin_socket().exists()
            && TcpStream::connect(("127.0.0.1", self.frontend)).is_ok()
            && TcpStream::connect(&self.tcp_stats).is_ok())
        {
            if Instant::now() > deadline {
                panic!("HAProxy did not start within {START_TIMEOUT:?}; its log:\n{}", self.log());
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops HAProxy and starts it again on the same configuration, as a reload without a
    /// server-state file does: every server's state and weight set through the runtime API
    /// is lost, back to what haproxy.cfg says.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(self.admin_socket());
        self.child = Haproxy::spawn(&self.binary, self.dir.path());
        self.wait_started();
    }

    /// The UNIX socket at `level admin`.
    pub fn admin_socket(&self) -> PathBuf {
        self.dir.path().join("admin.sock")
    }

    /// A UNIX socket at `level user` (too low to change servers).
    pub fn user_socket(&self) -> PathBuf {
        self.dir.path().join("user.sock")
    }

    /// The TCP admin socket, `127.0.0.1:<port>`.
    pub fn tcp_stats(&self) -> &str {
        &self.tcp_stats
    }

    /// HAProxy's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }

    /// The bodies of `requests` GETs of `path` through the frontend, sorted and deduplicated
    /// (a status line stands for an answer other than 200).
    pub fn answering(&self, path: &str, requests: usize) -> Vec<String> {
        let mut answers: Vec<String> = (0..requests).map(|_| self.get(path)).collect();
        answers.sort();
        answers.dedup();
        answers
    }

    /// One GET of `path` through the frontend; the body, or the status line when not 200.
    pub fn get(&self, path: &str) -> String {
        let mut conn = TcpStream::connect(("127.0.0.1", self.frontend)).expect("connect frontend");
        conn.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
        let request = format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n");
        conn.write_all(request.as_bytes()).expect("send request");
        let mut answer = String::new();
        let _ = conn.read_to_string(&mut answer);
        match answer.split_once("\r\n\r\n") {
            Some((head, body)) if head.starts_with("HTTP/1.1 200") => body.to_string(),
            _ => answer.lines().next().unwrap_or("(no answer)").to_string(),
        }
    }

    /// `show servers state app` through the TCP socket: (server, admin state, weight).
    pub fn servers_state(&self) -> Vec<(String, u32, u32)> {
        let mut conn = TcpStream::connect(&self.tcp_stats).expect("connect stats socket");
        conn.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
        conn.write_all(b"show servers state app\n").expect("send show");
        let mut answer = String::new();
        let _ = conn.read_to_string(&mut answer);
        let header: Vec<&str> = answer
            .lines()
            .find_map(|l| l.strip_prefix('#'))
            .unwrap_or_else(|| panic!("no header in {answer:?}"))
            .split_whitespace()
            .collect();
        let col = |n: &str| header.iter().position(|c| *c == n).expect("column");
        let (name, admin, weight) = (col("srv_name"), col("srv_admin_state"), col("srv_uweight"));
        answer
            .lines()
            .skip_while(|l| !l.starts_with('#'))
            .skip(1)
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f[name].to_string(), f[admin].parse().unwrap(), f[weight].parse().unwrap())
            })
            .collect()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("haproxy log:\n{}", self.log());
        }
    }
}
