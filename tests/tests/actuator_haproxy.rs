//! The `haproxy` step against a real HAProxy (Debian's haproxy package): a frontend on
//! loopback balancing one backend over two tiny HTTP servers, `prod` and `dr`, each answering
//! with its own name. What a user relies on: after the step, requests through HAProxy reach the
//! servers the step put in service and no others; a wrong name or a socket without `level
//! admin` fails with a message that says what to fix.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use drover::actuate::{Actuator, RealActuator, StepContext, StepError, StepOutput};
use drover::spec::{HaproxySet, HaproxyState, HaproxyStep, OnFailure, RunOn, Step, StepAction};

/// How long HAProxy gets to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Timeout of the steps under test.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests sent through the frontend to see which servers answer.
const REQUESTS: usize = 8;

/// A tiny HTTP server on loopback answering every request with its name; stopped on drop.
struct AppServer {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl AppServer {
    fn start(name: &'static str) -> AppServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind an app server port");
        let port = listener.local_addr().expect("app server address").port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = thread::spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                let mut request = [0u8; 4096];
                let _ = conn.read(&mut request);
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{name}",
                    name.len()
                );
                let _ = conn.write_all(answer.as_bytes());
                let _ = conn.shutdown(Shutdown::Both);
            }
        });
        AppServer { port, stop, thread: Some(thread) }
    }
}

impl Drop for AppServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A free loopback port (bound, then released for HAProxy to take).
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("free port address").port()
}

/// HAProxy in the foreground with an admin socket (UNIX and TCP) and a user-level socket;
/// killed on drop, also when the test panics.
struct Haproxy {
    child: Child,
    dir: tempfile::TempDir,
    frontend: u16,
    tcp_stats: String,
    _apps: (AppServer, AppServer),
}

impl Haproxy {
    fn start(binary: &Path) -> Haproxy {
        let apps = (AppServer::start("prod"), AppServer::start("dr"));
        let dir = tempfile::tempdir().expect("temp dir");
        let frontend = free_port();
        let tcp_stats = format!("127.0.0.1:{}", free_port());
        let d = dir.path().display();
        let config = format!(
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
             \x20   balance roundrobin\n\
             \x20   server prod 127.0.0.1:{}\n\
             \x20   server dr 127.0.0.1:{} disabled\n",
            apps.0.port, apps.1.port
        );
        let cfg = dir.path().join("haproxy.cfg");
        std::fs::write(&cfg, config).expect("write haproxy.cfg");
        let log = std::fs::File::create(dir.path().join("haproxy.log")).expect("haproxy log");
        let child = Command::new(binary)
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let h = Haproxy { child, dir, frontend, tcp_stats, _apps: apps };
        let deadline = Instant::now() + START_TIMEOUT;
        while !(h.admin_socket().exists() && TcpStream::connect(("127.0.0.1", frontend)).is_ok()) {
            if Instant::now() > deadline {
                panic!("HAProxy did not start within {START_TIMEOUT:?}; its log:\n{}", h.log());
            }
            thread::sleep(Duration::from_millis(50));
        }
        h
    }

    fn admin_socket(&self) -> PathBuf {
        self.dir.path().join("admin.sock")
    }

    fn user_socket(&self) -> PathBuf {
        self.dir.path().join("user.sock")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }

    /// Which servers answer `REQUESTS` requests through the frontend, sorted and deduplicated.
    fn answering(&self) -> Vec<String> {
        let mut names: Vec<String> = (0..REQUESTS).map(|_| self.get()).collect();
        names.sort();
        names.dedup();
        names
    }

    /// One request through the frontend; the body, or the status line when not 200.
    fn get(&self) -> String {
        let mut conn = TcpStream::connect(("127.0.0.1", self.frontend)).expect("connect frontend");
        conn.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
        conn.write_all(b"GET / HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
            .expect("send request");
        let mut answer = String::new();
        let _ = conn.read_to_string(&mut answer);
        match answer.split_once("\r\n\r\n") {
            Some((head, body)) if head.starts_with("HTTP/1.1 200") => body.to_string(),
            _ => answer.lines().next().unwrap_or("(no answer)").to_string(),
        }
    }

    /// `show servers state app` through the TCP socket: (server, admin state, weight).
    fn servers_state(&self) -> Vec<(String, u32, u32)> {
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
    }
}

fn change(server: &str, state: HaproxyState, weight: Option<u16>) -> HaproxySet {
    HaproxySet { server: server.into(), state, weight }
}

async fn run(socket: &str, set: Vec<HaproxySet>) -> Result<StepOutput, StepError> {
    let step = Step {
        run_on: RunOn::Any,
        timeout: STEP_TIMEOUT,
        retries: 0,
        backoff: Duration::from_secs(1),
        on_failure: OnFailure::Abort,
        action: StepAction::Haproxy(HaproxyStep { socket: socket.into(), set }),
    };
    let ctx = StepContext {
        service: "file-transfer".into(),
        epoch: 3,
        from_site: "prod".into(),
        to_site: "dr".into(),
        recovery_point: None,
        test: false,
    };
    RealActuator::new().run(&step, &ctx).await
}

fn failed_reason(result: Result<StepOutput, StepError>) -> String {
    match result {
        Err(StepError::Failed { reason, .. }) => reason,
        other => panic!("expected a failed step, got {other:?}"),
    }
}

#[tokio::test]
async fn haproxy_step_moves_traffic_from_prod_to_dr() {
    let test = "haproxy_step_moves_traffic_from_prod_to_dr";
    let Some(binary) = drover_tests::require_program(test, "haproxy", "haproxy") else { return };
    let h = Haproxy::start(&binary);
    assert_eq!(h.answering(), ["prod"], "before the step only prod serves");

    let socket = h.admin_socket().display().to_string();
    let out = run(
        &socket,
        vec![
            change("app/prod", HaproxyState::Maint, None),
            change("app/dr", HaproxyState::Ready, None),
        ],
    )
    .await
    .unwrap_or_else(|e| panic!("{e}; HAProxy log:\n{}", h.log()));
    assert!(
        out.detail.contains("app/prod maint, app/dr ready set and read back"),
        "{}",
        out.detail
    );
    assert_eq!(h.answering(), ["dr"], "after the step only dr serves");

    // Back, with a drain on the way: a drained server takes no new requests.
    run(&socket, vec![change("app/prod", HaproxyState::Ready, None)]).await.unwrap();
    run(&socket, vec![change("app/dr", HaproxyState::Drain, None)]).await.unwrap();
    assert_eq!(h.answering(), ["prod"]);
}

#[tokio::test]
async fn haproxy_step_names_unknown_backends_and_servers() {
    let test = "haproxy_step_names_unknown_backends_and_servers";
    let Some(binary) = drover_tests::require_program(test, "haproxy", "haproxy") else { return };
    let h = Haproxy::start(&binary);
    let socket = h.admin_socket().display().to_string();

    let reason =
        failed_reason(run(&socket, vec![change("app/nope", HaproxyState::Ready, None)]).await);
    assert!(reason.contains("backend \"app\" has no server \"nope\""), "{reason}");
    assert!(reason.contains("check the step's server names against haproxy.cfg"), "{reason}");

    let reason =
        failed_reason(run(&socket, vec![change("web/prod", HaproxyState::Maint, None)]).await);
    assert!(reason.contains("HAProxy has no backend \"web\""), "{reason}");
    assert!(reason.contains("against haproxy.cfg"), "{reason}");

    // The first change went through before the second failed; nothing else moved.
    let reason = failed_reason(
        run(
            &socket,
            vec![
                change("app/dr", HaproxyState::Ready, None),
                change("app/ghost", HaproxyState::Maint, None),
            ],
        )
        .await,
    );
    assert!(reason.contains("no server \"ghost\""), "{reason}");
    assert_eq!(h.answering(), ["dr", "prod"]);
}

#[tokio::test]
async fn haproxy_step_needs_an_admin_level_socket() {
    let test = "haproxy_step_needs_an_admin_level_socket";
    let Some(binary) = drover_tests::require_program(test, "haproxy", "haproxy") else { return };
    let h = Haproxy::start(&binary);
    let socket = h.user_socket().display().to_string();
    let reason =
        failed_reason(run(&socket, vec![change("app/dr", HaproxyState::Ready, None)]).await);
    assert!(reason.contains("permission denied; the stats socket needs 'level admin'"), "{reason}");
    assert_eq!(h.answering(), ["prod"], "nothing changed");
}

#[tokio::test]
async fn haproxy_step_over_tcp_sets_and_reads_back_weights() {
    let test = "haproxy_step_over_tcp_sets_and_reads_back_weights";
    let Some(binary) = drover_tests::require_program(test, "haproxy", "haproxy") else { return };
    let h = Haproxy::start(&binary);
    let out = run(
        &h.tcp_stats,
        vec![
            change("app/dr", HaproxyState::Ready, Some(42)),
            change("app/prod", HaproxyState::Ready, Some(0)),
        ],
    )
    .await
    .unwrap_or_else(|e| panic!("{e}; HAProxy log:\n{}", h.log()));
    assert!(
        out.detail.contains("app/dr ready weight 42, app/prod ready weight 0"),
        "{}",
        out.detail
    );
    let state = h.servers_state();
    let weight = |name: &str| state.iter().find(|(n, _, _)| n == name).map(|(_, _, w)| *w);
    assert_eq!((weight("dr"), weight("prod")), (Some(42), Some(0)), "{state:?}");
    // Weight 0 takes prod out of the rotation.
    assert_eq!(h.answering(), ["dr"]);
}
