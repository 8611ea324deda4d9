//! The `haproxy` step against a real HAProxy (Debian's haproxy package): a frontend on
//! loopback balancing one backend over two tiny HTTP servers, `prod` and `dr`, each answering
//! with its own name. What a user relies on: after the step, requests through HAProxy reach the
//! servers the step put in service and no others; a wrong name or a socket without `level
//! admin` fails with a message that says what to fix.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use drover::actuate::{Actuator, RealActuator, StepContext, StepError, StepOutput};
use drover::spec::{HaproxySet, HaproxyState, HaproxyStep, OnFailure, RunOn, Step, StepAction};
use drover_tests::servers::{Backend, Haproxy};

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

/// HAProxy balancing backend `app` over two app servers, `prod` (in service) and `dr` (in
/// maintenance). Keep the servers as long as HAProxy.
fn start(binary: &Path) -> (Haproxy, (AppServer, AppServer)) {
    let apps = (AppServer::start("prod"), AppServer::start("dr"));
    let servers = [
        Backend { name: "prod", addr: ([127, 0, 0, 1], apps.0.port).into(), enabled: true },
        Backend { name: "dr", addr: ([127, 0, 0, 1], apps.1.port).into(), enabled: false },
    ];
    (Haproxy::start(binary, &servers), apps)
}

/// Which app servers answer [`REQUESTS`] requests through HAProxy.
fn answering(h: &Haproxy) -> Vec<String> {
    h.answering("/", REQUESTS)
}

fn change(server: &str, state: HaproxyState, weight: Option<u16>) -> HaproxySet {
    HaproxySet { server: server.into(), state, weight }
}

async fn run(socket: &str, set: Vec<HaproxySet>) -> Result<StepOutput, StepError> {
    let (step, ctx) = step_and_context(socket, set);
    RealActuator::new().run(&step, &ctx).await
}

/// The read-back alone, as a drift check runs it.
async fn verify(socket: &str, set: Vec<HaproxySet>) -> Result<StepOutput, StepError> {
    let (step, ctx) = step_and_context(socket, set);
    RealActuator::new().verify(&step, &ctx).await
}

fn step_and_context(socket: &str, set: Vec<HaproxySet>) -> (Step, StepContext) {
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
    (step, ctx)
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
    let (h, _apps) = start(&binary);
    assert_eq!(answering(&h), ["prod"], "before the step only prod serves");

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
    assert_eq!(answering(&h), ["dr"], "after the step only dr serves");

    // Back, with a drain on the way: a drained server takes no new requests.
    run(&socket, vec![change("app/prod", HaproxyState::Ready, None)]).await.unwrap();
    run(&socket, vec![change("app/dr", HaproxyState::Drain, None)]).await.unwrap();
    assert_eq!(answering(&h), ["prod"]);
}

#[tokio::test]
async fn haproxy_step_names_unknown_backends_and_servers() {
    let test = "haproxy_step_names_unknown_backends_and_servers";
    let Some(binary) = drover_tests::require_program(test, "haproxy", "haproxy") else { return };
    let (h, _apps) = start(&binary);
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
    assert_eq!(answering(&h), ["dr", "prod"]);
}

#[tokio::test]
async fn haproxy_step_needs_an_admin_level_socket() {
    let test = "haproxy_step_needs_an_admin_level_socket";
    let Some(binary) = drover_tests::require_program(test, "haproxy", "haproxy") else { return };
    let (h, _apps) = start(&binary);
    let socket = h.user_socket().display().to_string();
    let reason =
        failed_reason(run(&socket, vec![change("app/dr", HaproxyState::Ready, None)]).await);
    assert!(reason.contains("permission denied; the stats socket needs 'level admin'"), "{reason}");
    assert_eq!(answering(&h), ["prod"], "nothing changed");
}

#[tokio::test]
async fn haproxy_step_over_tcp_sets_and_reads_back_weights() {
    let test = "haproxy_step_over_tcp_sets_and_reads_back_weights";
    let Some(binary) = drover_tests::require_program(test, "haproxy", "haproxy") else { return };
    let (h, _apps) = start(&binary);
    let out = run(
        h.tcp_stats(),
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
    assert_eq!(answering(&h), ["dr"]);
}

#[tokio::test]
async fn the_read_back_alone_tells_drift_from_an_unreachable_haproxy() {
    let test = "the_read_back_alone_tells_drift_from_an_unreachable_haproxy";
    let Some(binary) = drover_tests::require_program(test, "haproxy", "haproxy") else { return };
    let (mut h, _apps) = start(&binary);
    let socket = h.admin_socket().display().to_string();
    let to_dr = || {
        vec![
            change("app/prod", HaproxyState::Maint, None),
            change("app/dr", HaproxyState::Ready, None),
        ]
    };
    // Before the step: drift, naming the server; the check itself set nothing.
    let why = failed_reason(verify(&socket, to_dr()).await);
    assert!(why.contains("app/prod"), "{why}");
    assert_eq!(answering(&h), ["prod"], "a check changes nothing");
    run(&socket, to_dr()).await.expect("the step");
    let out = verify(&socket, to_dr()).await.expect("held");
    assert!(out.detail.contains("still held"), "{}", out.detail);
    // A restart reverts the states: drift again.
    h.restart();
    let why = failed_reason(verify(&socket, to_dr()).await);
    assert!(why.contains("app/prod"), "{why}");
    // No socket at all (HAProxy down, or mid-reload): not drift, nothing known.
    let gone = format!("{socket}.gone");
    match verify(&gone, to_dr()).await {
        Err(StepError::Unreachable { reason }) => assert!(reason.contains("no socket"), "{reason}"),
        other => panic!("expected Unreachable, got {other:?}"),
    }
}
